"""``python -m padam_lightning.cli`` runs ``padam-fit`` (padam-sweep starts its runs this way)."""

from padam_lightning.cli import main

if __name__ == "__main__":
    main()
