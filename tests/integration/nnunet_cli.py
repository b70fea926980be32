"""Run nnU-Net v2's own ``nnUNetv2_train`` or ``nnUNetv2_predict`` entry point with a small trainer registered by
name, as nnU-Net's ``nnUNetTrainer_Xepochs`` variants are: ``python nnunet_cli.py nnUNetv2_train ARGS...``.

``nnUNetTrainer_scnasTest`` trains one epoch of two iterations (one validation iteration), then nnU-Net's final
validation runs as usual. nnU-Net finds a trainer by importing every module of its trainer package (and of
``nnUNet_extTrainer``); some of those import torchvision, which a CPU-only torch with PyPI's torchvision cannot
load, so the lookup is given this class by name instead (the only change: everything else is nnU-Net's command).
"""

from __future__ import annotations

import sys

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_scnasTest(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming of trainer variants
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:  # noqa: B008 - nnU-Net's signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1


def main() -> None:
    import nnunetv2.utilities.find_objects as find_objects

    found = find_objects.recursive_find_trainer_class_by_name

    def find(name: str) -> type:
        return nnUNetTrainer_scnasTest if name == nnUNetTrainer_scnasTest.__name__ else found(name)

    command = sys.argv[1]
    sys.argv = [command, *sys.argv[2:]]
    if command == "nnUNetv2_train":
        import nnunetv2.run.run_training as module

        module.recursive_find_trainer_class_by_name = find  # type: ignore[attr-defined]
        module.run_training_entry()
    elif command == "nnUNetv2_predict":
        import nnunetv2.inference.predict_from_raw_data as predict

        predict.recursive_find_trainer_class_by_name = find  # type: ignore[attr-defined]
        predict.predict_entry_point()
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
