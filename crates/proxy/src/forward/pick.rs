//! Choosing a backend for one try: the pool's policy among usable
//! backends, never one this request already tried.

use tandem_core::LbPolicy;
use tandem_core::lb::PickContext;

use crate::table::PoolRt;

/// The index of the backend for the next try, or `None` when no usable
/// backend is left.
pub fn backend(pool: &PoolRt, tried: &[usize], client_hash: u64) -> Option<usize> {
    let cx = PickContext {
        cursor: &pool.state.cursor,
        hash: client_hash,
        exclude: tried,
        random: if pool.config.policy == LbPolicy::RandomTwoChoices {
            [rand::random(), rand::random()]
        } else {
            [0, 0]
        },
    };
    pool.balancer.pick(&pool.backends, &cx).map(|p| p.index)
}
