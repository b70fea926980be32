"""Case names in file names: the NIfTI file ending and nnU-Net's channel suffix (``<case>_0000.nii.gz``)."""

from __future__ import annotations

#: The file endings of NIfTI images, longest first.
NIFTI_ENDINGS = (".nii.gz", ".nii")


def strip_nifti_ending(name: str) -> str | None:
    """``case.nii.gz`` or ``case.nii`` -> ``case``; None for a name with neither ending."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return None


def strip_channel_suffix(stem: str) -> str | None:
    """``case_0000`` -> ``case`` (nnU-Net's four-digit channel number); None for a name without one."""
    if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
        return stem[:-5]
    return None
