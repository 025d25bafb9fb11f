//! Unit tests of the node, with no process and no swarm.
