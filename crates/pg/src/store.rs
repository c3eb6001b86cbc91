//! Mail in PostgreSQL (written below).
