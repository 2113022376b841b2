from lvs_hooks.cli import main

main()
