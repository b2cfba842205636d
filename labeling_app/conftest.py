"""Doctest collection over this package must not import the Streamlit scripts: they are programs
run by ``streamlit run`` (the router calls ``main()``, pages draw and query on import)."""

collect_ignore = ["app.py", "sso_app.py"]
collect_ignore_glob = ["pages/*.py"]
