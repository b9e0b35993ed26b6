from smtprelay.cli import main

main()
