//! Key and certificate generation: the `keygen` subcommand of both binaries.
