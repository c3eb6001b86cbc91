//! Protocol limits, each with the RFC it comes from.

/// RFC 2449 section 4: "The maximum length of a command line is 255 octets, including the
/// terminating CRLF." We accept 255 octets *before* the CRLF, so a client that counts without it
/// is not punished; anything longer is answered with `-ERR`.
pub const MAX_COMMAND_LINE: usize = 255;

/// How many octets of one over-long line are read and thrown away before the connection is
/// closed. A client that streams a "line" longer than this is not speaking POP3.
pub const MAX_DISCARDED_LINE: usize = 64 * 1024;

/// RFC 1939 section 3: "the server MUST have an inactivity autologout timer ... of at least 10
/// minutes."
pub const MIN_AUTOLOGOUT_SECS: u64 = 600;

/// RFC 1939 section 7 (UIDL): "The unique-id of a message is an arbitrary server-determined string,
/// consisting of one to 70 characters in the range 0x21 to 0x7E".
pub const MAX_UNIQUE_ID: usize = 70;

/// Failed authentication attempts allowed on one connection before it is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// Consecutive unknown or malformed commands tolerated before the connection is closed
/// (a peer speaking another protocol, or garbage, gets a bounded number of answers).
pub const MAX_BAD_COMMANDS: u32 = 20;

/// RFC 5034 section 4: the 255-octet limit does not apply to SASL responses; SCRAM and GSSAPI
/// messages stay well below this.
pub const MAX_SASL_LINE: usize = 8 * 1024;
