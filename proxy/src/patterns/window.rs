//! Counts over sliding windows: one bucket per minute for the last hour, kept
//! sparse (a pattern seen in three minutes holds three buckets), so a rare
//! pattern costs a few bytes and a busy one at most 60 buckets.
use crate::event::Disposition;
use std::collections::VecDeque;

pub const MINUTE_MS: i64 = 60_000;
/// Buckets kept: an hour of minutes.
pub const BUCKETS: i64 = 60;

/// Events and bytes by what the stage chain decided.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counts {
    /// Indexed, archived only (excluded), dropped.
    pub events: [u64; 3],
    pub bytes: [u64; 3],
}

pub fn index_of(d: Disposition) -> usize {
    match d {
        Disposition::Index => 0,
        Disposition::ArchiveOnly => 1,
        Disposition::Drop => 2,
    }
}

impl Counts {
    pub fn add(&mut self, d: Disposition, bytes: u64) {
        let i = index_of(d);
        self.events[i] += 1;
        self.bytes[i] += bytes;
    }
}

/// A value per minute for the last hour.
#[derive(Debug, Default)]
pub struct Window<T> {
    /// (minute since the epoch, value), oldest first, at most [`BUCKETS`].
    buckets: VecDeque<(i64, T)>,
}

impl<T: Default> Window<T> {
    /// The bucket of the minute of `now_ms`; older than an hour goes.
    pub fn at(&mut self, now_ms: i64) -> &mut T {
        let minute = now_ms.div_euclid(MINUTE_MS);
        while self
            .buckets
            .front()
            .is_some_and(|(m, _)| *m <= minute - BUCKETS)
        {
            self.buckets.pop_front();
        }
        // A clock that stepped back adds to the newest bucket rather than reorder.
        if self.buckets.back().is_none_or(|(m, _)| *m < minute) {
            self.buckets.push_back((minute, T::default()));
        }
        &mut self.buckets.back_mut().expect("just pushed").1
    }

    /// The buckets of the last hour up to `now_ms`, with the weight each has in
    /// the last `minutes` minutes: 1 for those wholly inside, the share still
    /// inside for the oldest one (a sliding-window estimate), 0 outside.
    pub fn weighted(&self, now_ms: i64, minutes: i64) -> impl Iterator<Item = (f64, i64, &T)> {
        let minute = now_ms.div_euclid(MINUTE_MS);
        let into = (now_ms.rem_euclid(MINUTE_MS)) as f64 / MINUTE_MS as f64;
        self.buckets.iter().filter_map(move |(m, v)| {
            let age = minute - m;
            let w = if age < minutes {
                1.0
            } else if age == minutes {
                1.0 - into
            } else {
                0.0
            };
            (w > 0.0).then_some((w, *m, v))
        })
    }

    /// The value of the bucket of minute `m`, if any.
    pub fn minute(&self, m: i64) -> Option<&T> {
        self.buckets.iter().find(|(x, _)| *x == m).map(|(_, v)| v)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_slide_and_weigh_the_oldest_minute_by_what_is_left_of_it() {
        let mut w: Window<u64> = Window::default();
        *w.at(0) += 5;
        *w.at(30_000) += 5;
        *w.at(MINUTE_MS + 15_000) += 4;
        assert_eq!(w.len(), 2);
        // At 1m15s, the last minute holds the current bucket and 3/4 of the previous.
        let now = MINUTE_MS + 15_000;
        let last_minute: f64 = w.weighted(now, 1).map(|(wt, _, v)| wt * *v as f64).sum();
        assert!(
            (last_minute - (4.0 + 0.75 * 10.0)).abs() < 1e-9,
            "{last_minute}"
        );
        let hour: f64 = w.weighted(now, 60).map(|(wt, _, v)| wt * *v as f64).sum();
        assert_eq!(hour, 14.0);
        // An hour later the first bucket is gone; the second too a minute on.
        *w.at(60 * MINUTE_MS) += 1;
        assert_eq!(w.len(), 2);
        *w.at(61 * MINUTE_MS) += 1;
        assert_eq!(w.len(), 2);
        assert_eq!(w.minute(1), None);
        // A clock stepping back adds to the newest bucket.
        *w.at(0) += 1;
        assert_eq!(w.minute(61), Some(&2));
    }

    #[test]
    fn counts_split_by_disposition() {
        let mut c = Counts::default();
        c.add(Disposition::Index, 10);
        c.add(Disposition::ArchiveOnly, 20);
        c.add(Disposition::Drop, 30);
        c.add(Disposition::Index, 1);
        assert_eq!(c.events, [2, 1, 1]);
        assert_eq!(c.bytes, [11, 20, 30]);
    }
}
