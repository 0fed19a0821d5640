//! The benchmark suite behind `cmapp-bench` (see BENCHMARKS.md).
//!
//! | module      | what it measures or provides                                      |
//! |-------------|-------------------------------------------------------------------|
//! | `sys`       | the monotonic clock, `/proc` readings, limits, the cleanup registry |
//! | `fixture`   | the binaries, key material, real cmappserver and cmappmgr processes |
//! | `footprint` | idle resident memory and binary sizes                              |
//! | `latency`   | exit-to-manager-exit detection latency                             |
//! | `floor`     | the same chain of processes with no work: the machine's floor      |
//! | `roundtrip` | remote `/bin/echo ok` round trip, against NRPE and ssh             |
//! | `ssh`       | a private sshd on loopback and the `ssh host cmd` it answers        |
//! | `oneshot`   | a one-shot `-service /bin/true` run against `cmappmgr check`       |
//! | `handshake` | mutual-TLS connections per second                                  |
//! | `scale`     | N processes and N managers on one server                           |
//! | `storm`     | N managers re-attaching after cmappserver is killed and restarted  |
//! | `report`    | the table, the targets, the machine                                |

pub mod fixture;
pub mod floor;
pub mod footprint;
pub mod handshake;
pub mod latency;
pub mod oneshot;
pub mod report;
pub mod roundtrip;
pub mod scale;
pub mod ssh;
pub mod storm;
pub mod sys;
