"""``python -m therapref.cli`` (what ``accelerate launch … -m therapref.cli train`` runs)."""

from therapref.cli import app

if __name__ == "__main__":
    app()
