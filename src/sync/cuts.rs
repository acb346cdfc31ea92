//! Where a full window or cell is cut (steps 3 and 4 of the proof in [`super`]): pure functions
//! of the times a page and its probes showed. Correctness never depends on the cuts, only the
//! number of requests does: every part is non-empty, smaller than what it was cut from, and the
//! parts cover it exactly.

use crate::timestamp::Timestamp;

/// How many parts a full window is cut into: enough for each to hold about three quarters of
/// a page of `per_page` alerts, if `count` is about right.
pub(super) fn parts_for(count: usize, per_page: usize) -> usize {
    (count as f64 / (0.75 * per_page.max(1) as f64))
        .ceil()
        .clamp(2.0, 4096.0) as usize
}

/// The bounds `[a, c1, …, ck, b]` of the parts of the full window `[a, b)`: quantiles of the
/// page's `times`, every probe's time (with an ordered server those are the window's quantiles
/// by rank), and, where the page and probes left an end of the window untouched that is more
/// than half of it (a server serving newest or oldest first), that end halved, so the earliest
/// part shrinks geometrically whatever the order.
pub(super) fn by_time(
    mut times: Vec<Timestamp>,
    probes: &[Timestamp],
    a: Timestamp,
    b: Timestamp,
    parts: usize,
) -> Vec<Timestamp> {
    times.retain(|t| *t >= a && *t < b);
    times.sort_unstable();
    let mut cuts = quantiles(&times, Some(a), Some(b), parts);
    let inside = |t: &Timestamp| *t > a && *t < b;
    cuts.extend(probes.iter().copied().filter(inside));
    let reached = times
        .iter()
        .chain(probes.iter().filter(|t| inside(t)))
        .copied();
    if let (Some(lo), Some(hi)) = (reached.clone().min(), reached.max()) {
        let half = (b.ticks() - a.ticks()) / 2;
        if lo.ticks() - a.ticks() > half {
            cuts.push(Timestamp::from_ticks(
                a.ticks() + (lo.ticks() - a.ticks()) / 2,
            ));
            cuts.push(lo);
        }
        if b.ticks() - hi.ticks() > half {
            cuts.push(hi.plus_ticks(1));
            cuts.push(Timestamp::from_ticks(
                hi.ticks() + (b.ticks() - hi.ticks()) / 2,
            ));
        }
    }
    cuts.retain(inside);
    cuts.sort_unstable();
    cuts.dedup();
    if cuts.is_empty() {
        cuts.push(Timestamp::from_ticks(
            a.ticks() + (b.ticks() - a.ticks()) / 2,
        ));
        cuts.retain(inside);
    }
    let mut bounds = Vec::with_capacity(cuts.len() + 2);
    bounds.push(a);
    bounds.extend(cuts);
    bounds.push(b);
    bounds
}

/// The cells `[lo, c1), …, [ck, hi)` (a missing bound is open) of a full cell of creation
/// times, cut at quantiles of the creation times its page and probes showed.
pub(super) fn by_creation(
    mut created: Vec<Timestamp>,
    probes: &[Timestamp],
    lo: Option<Timestamp>,
    hi: Option<Timestamp>,
    parts: usize,
) -> Vec<(Option<Timestamp>, Option<Timestamp>)> {
    let inside = |t: &Timestamp| lo.is_none_or(|lo| *t > lo) && hi.is_none_or(|hi| *t < hi);
    created.retain(|t| lo.is_none_or(|lo| *t >= lo) && hi.is_none_or(|hi| *t < hi));
    created.sort_unstable();
    let mut cuts = quantiles(&created, lo, hi, parts);
    cuts.extend(probes.iter().copied().filter(inside));
    cuts.retain(inside);
    cuts.sort_unstable();
    cuts.dedup();
    if cuts.is_empty()
        && let (Some(lo), Some(hi)) = (lo, hi)
    {
        cuts.push(Timestamp::from_ticks(
            lo.ticks() + (hi.ticks() - lo.ticks()) / 2,
        ));
        cuts.retain(inside);
    }
    let mut bounds: Vec<Option<Timestamp>> = vec![lo];
    bounds.extend(cuts.into_iter().map(Some));
    bounds.push(hi);
    bounds.windows(2).map(|w| (w[0], w[1])).collect()
}

/// `parts − 1` quantiles of the sorted `times`, moved strictly inside `(lo, hi)`: a value at
/// `lo` becomes `lo + 1 tick`, so the instant `lo` is split off as a part of its own.
fn quantiles(
    times: &[Timestamp],
    lo: Option<Timestamp>,
    hi: Option<Timestamp>,
    parts: usize,
) -> Vec<Timestamp> {
    if times.is_empty() {
        return Vec::new();
    }
    let parts = parts.max(2);
    (1..parts)
        .map(|i| times[i * times.len() / parts])
        .map(|t| match lo {
            Some(lo) if t <= lo => lo.plus_ticks(1),
            _ => t,
        })
        .map(|t| match hi {
            Some(hi) if t >= hi => hi.plus_ticks(-1),
            _ => t,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(t: &str) -> Timestamp {
        Timestamp::parse(t).unwrap()
    }

    fn page(times: &[&str]) -> Vec<Timestamp> {
        times.iter().map(|t| ts(t)).collect()
    }

    #[test]
    fn a_window_is_cut_at_quantiles_inside_it() {
        let a = ts("2024-01-01T00:00:00Z");
        let b = ts("2024-01-02T00:00:00Z");
        let p = page(&[
            "2024-01-01T04:00:00Z",
            "2024-01-01T01:00:00Z",
            "2024-01-01T23:00:00Z",
            "2024-01-01T02:00:00Z",
        ]);
        assert_eq!(
            by_time(p, &[], a, b, 4),
            vec![
                a,
                ts("2024-01-01T02:00:00Z"),
                ts("2024-01-01T04:00:00Z"),
                ts("2024-01-01T23:00:00Z"),
                b
            ]
        );
        // many alerts on the window's first instant: that instant becomes a part of its own
        let p = page(&["2024-01-01T00:00:00Z"; 6]);
        assert_eq!(by_time(p.clone(), &[], a, b, 3)[..2], [a, a.plus_ticks(1)]);
        // a two-tick window splits into its two instants
        assert_eq!(
            by_time(p, &[], a, a.plus_ticks(2), 5),
            vec![a, a.plus_ticks(1), a.plus_ticks(2)]
        );
    }

    #[test]
    fn a_page_of_the_newest_alerts_halves_the_window_s_untouched_start() {
        let a = ts("2024-01-01T00:00:00Z");
        let b = ts("2024-01-11T00:00:00Z");
        // a newest-first server: the page holds the last day only
        let p = page(&[
            "2024-01-10T06:00:00Z",
            "2024-01-10T12:00:00Z",
            "2024-01-10T18:00:00Z",
        ]);
        let bounds = by_time(p.clone(), &[], a, b, 2);
        assert_eq!(bounds[1], ts("2024-01-05T15:00:00Z"), "{bounds:?}");
        assert_eq!(bounds[2], ts("2024-01-10T06:00:00Z"));
        // with probes (ranks 2P−1, 4P−1 of a newest-first server) their times cut too
        let probes = page(&["2024-01-08T00:00:00Z", "2024-01-04T00:00:00Z"]);
        let bounds = by_time(p, &probes, a, b, 2);
        assert!(
            bounds.contains(&probes[0]) && bounds.contains(&probes[1]),
            "{bounds:?}"
        );
        assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((bounds[0], *bounds.last().unwrap()), (a, b));
    }

    #[test]
    fn cells_of_creation_time_cover_the_range_and_isolate_a_crowded_instant() {
        let c = page(&[
            "2024-01-01T01:00:00Z",
            "2024-01-01T02:00:00Z",
            "2024-01-01T03:00:00Z",
            "2024-01-01T04:00:00Z",
        ]);
        let cells = by_creation(c, &[], None, None, 2);
        assert_eq!(
            cells,
            vec![
                (None, Some(ts("2024-01-01T03:00:00Z"))),
                (Some(ts("2024-01-01T03:00:00Z")), None)
            ]
        );
        // every alert created at the cell's first instant: that instant is cut off
        let lo = ts("2024-01-01T01:00:00Z");
        let cells = by_creation(vec![lo; 5], &[], Some(lo), None, 3);
        assert_eq!(
            cells,
            vec![
                (Some(lo), Some(lo.plus_ticks(1))),
                (Some(lo.plus_ticks(1)), None)
            ]
        );
        // a bounded cell without a sample is halved
        let hi = lo.plus_ticks(10);
        assert_eq!(
            by_creation(Vec::new(), &[], Some(lo), Some(hi), 2),
            vec![
                (Some(lo), Some(lo.plus_ticks(5))),
                (Some(lo.plus_ticks(5)), Some(hi))
            ]
        );
    }

    #[test]
    fn parts_hold_three_quarters_of_a_page() {
        assert_eq!(parts_for(2_000, 1_000), 3);
        assert_eq!(parts_for(10, 1_000), 2);
        assert_eq!(parts_for(usize::MAX, 1), 4096);
    }
}
