//! The core's seeded generator (SplitMix64 from `raftkv-rng`). The core must never use a
//! global RNG: one seed replays a run exactly.

pub(crate) use raftkv_rng::SplitMix64 as Rng;

/// The core's generator for `seed` (salted, so that it draws another stream than a
/// simulator seeded with the same number).
pub(crate) fn seeded(seed: u64) -> Rng {
    Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15)
}
