"""The practice portal: accounts, a web UI and sealed-blob API over the upstream store.

All decryption and verification happens in the browser (``static/lt/``); the server
holds no practice key and never sees audio or phone numbers. See docs/portal.md.
"""
