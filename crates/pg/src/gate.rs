//! Login throttling shared by every node (written below).
