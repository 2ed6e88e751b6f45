"""`builder plan`: the machine, the placement of a model on it, and the stack settings it writes."""
