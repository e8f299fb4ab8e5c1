from qrnn_deploy.cli import main

main()
