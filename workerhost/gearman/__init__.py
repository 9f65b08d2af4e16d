"""gearmand, as the host talks to it: worker connections that hold several jobs at once
(conn.py) and the text admin protocol (admin.py)."""
