"""Many independent servers on one machine: the lab that tests, demos and researchers share."""
