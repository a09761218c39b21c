from askonce.cli import main

main()
