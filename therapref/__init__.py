"""TheraPref: clinicians' preferences on therapy-chatbot replies → reward models and fine-tuning data."""

__version__ = "0.1.0"
