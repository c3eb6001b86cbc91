//! The client's token store (filled in below).
