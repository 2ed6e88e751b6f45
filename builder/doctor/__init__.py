"""`builder doctor`: is this host ready for the stack `builder up` would bring up?"""
