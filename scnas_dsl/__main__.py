from scnas_dsl.cli import main

main()
