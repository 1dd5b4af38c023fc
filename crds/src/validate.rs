//! Validation that spans fields, shared by the spooler (at config load) and the operator.
