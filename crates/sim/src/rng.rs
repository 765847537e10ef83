//! The simulator's only source of randomness: a SplitMix64 stream per seed (the workspace's
//! one generator, `raftkv-rng`). Never a global or thread-local generator, so one seed
//! replays exactly.

pub use raftkv_rng::{SplitMix64 as Rng, chain, mix64};
