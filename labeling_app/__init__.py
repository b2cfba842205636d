"""The Streamlit labeling app: a router (``app.py``) and small pages that call library functions."""
