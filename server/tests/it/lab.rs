//! End to end on the lab: real keepalived in network namespaces (added next).
