//! The client's OAuth2 flows (filled in below).
