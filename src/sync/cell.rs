//! The last resort of step 4 in [`super`]: a cell of one instant of both times that still holds
//! more alerts than a page, paged with overlapping `$skip` pages whose overlap proves continuity
//! in a way a changed order cannot pass by chance.

use super::{batch::PageSink, windows::Read, *};

impl Syncer {
    /// Pages the cell `q` asks for. The first page (already read and written) held
    /// `first_count` alerts, its first and last ids in `first`. Writes what it reads; the caller
    /// moves the watermark once this returns `Complete`.
    pub(super) async fn read_cell(
        &self,
        tenant: &Job,
        q: &WindowQuery,
        first_count: usize,
        first: PageSink,
        per_page: usize,
        c: &mut Counters,
    ) -> Result<Read, SyncError> {
        let overlap = overlap_for(per_page);
        let max_skip = tenant.source.max_skip();
        let first_tail: Vec<String> = first.tail.into_iter().collect();
        let mut seen = 0usize;
        for attempt in 0..=INSTANT_RESTARTS {
            let (mut skip, mut tail) = if attempt == 0 && first_count >= 2 {
                (advance(first_count, first_tail.len()), first_tail.clone())
            } else {
                (0, Vec::new())
            };
            let mut short_pages = 0usize;
            let continuous = loop {
                if let Some(limit) = max_skip
                    && skip > limit
                {
                    return Err(SyncError::CellTooLarge {
                        instant: q.from,
                        limit,
                    });
                }
                if c.pages >= self.settings.max_pages_per_run {
                    // the next run would start this cell again: one that needs more pages than
                    // a run may send would never complete, so it is held, with the reason
                    return Err(SyncError::CellOverPageLimit {
                        instant: q.from,
                        pages: self.settings.max_pages_per_run,
                    });
                }
                let page_q = WindowQuery { skip, ..q.clone() };
                let mut sink = PageSink::new(tenant, Some(q.top), overlap, false);
                sink.window = Some((q.from, q.to));
                sink.cell = q.created;
                let page = self.read_page(tenant, &page_q, &mut sink, None, c).await?;
                // Graph may answer short, even empty, and still say there is more. A page of
                // fewer than two alerts cannot overlap the next one, so the same offset is asked
                // again (a bounded number of times).
                if page.count < 2 && page.next_link.is_some() {
                    short_pages += 1;
                    if short_pages > 4 * INSTANT_RESTARTS {
                        break false;
                    }
                    continue;
                }
                if skip > 0 && !continues(&tail, &sink.head) {
                    tracing::warn!(instant = %q.from, skip, attempt, "the pages of an instant do not overlap as they must (alerts slid, or the order changed); reading it again");
                    break false;
                }
                seen = skip + page.count;
                // Only a page without a nextLink that is shorter than asked ends the cell; a page
                // the server shortened moves on by what it held.
                if page.next_link.is_none() && page.count < q.top {
                    break true;
                }
                skip += advance(page.count, sink.tail.len());
                tail = sink.tail.into_iter().collect();
            };
            if continuous {
                tracing::info!(instant = %q.from, alerts = seen, "read a cell shared by more alerts than a page");
                return Ok(Read::Complete);
            }
        }
        Err(SyncError::UnstableInstant {
            instant: q.from,
            count: seen,
            restarts: INSTANT_RESTARTS,
        })
    }
}

/// How many ids consecutive pages of a cell share, for pages of `per_page` alerts.
pub(super) fn overlap_for(per_page: usize) -> usize {
    (per_page / 10)
        .clamp(1, 500)
        .min(per_page.saturating_sub(1))
        .max(1)
}

/// How far the next page starts: past a page of `count` alerts, less the `tail` ids both must
/// share. A page of `n` alerts shares at most `n − 1`, so the offset always moves on.
fn advance(count: usize, tail: usize) -> usize {
    count
        .saturating_sub(tail.min(count.saturating_sub(1)))
        .max(1)
}

/// Whether a page starting with `head` continues the page that ended with `tail`: the head
/// repeats the tail in order, shifted by at most half its length (alerts that left the instant
/// before the boundary shift it left, alerts that entered shift it right). A run of at least
/// half the overlap in the same positions cannot come from a changed order by chance.
pub(super) fn continues(tail: &[String], head: &[String]) -> bool {
    let k = tail.len();
    if k == 0 {
        return false;
    }
    let max_shift = k / 2;
    let left = (0..=max_shift).any(|d| head.starts_with(&tail[d..]));
    let right = (1..=max_shift).any(|e| head.len() > e && head[e..].starts_with(&tail[..k - e]));
    left || right
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn a_page_continues_its_predecessor_only_with_the_overlap_in_order() {
        let tail = ids("a b c d e f");
        assert!(continues(&tail, &ids("a b c d e f g h")), "nothing slid");
        assert!(continues(&tail, &ids("c d e f g h")), "two alerts left");
        assert!(
            continues(&tail, &ids("x y a b c d e f")),
            "two alerts entered"
        );
        assert!(!continues(&tail, &ids("e f g h")), "four left: too far");
        assert!(!continues(&tail, &ids("f e d c b a")), "reordered");
        assert!(!continues(&tail, &ids("g h i j k l")), "none repeated");
        assert!(
            !continues(&tail, &ids("b a c d e f")),
            "one swap breaks the run"
        );
        assert!(!continues(&[], &ids("a")));
    }

    #[test]
    fn the_offset_always_moves_on() {
        assert_eq!(advance(100, 10), 90);
        assert_eq!(advance(2, 10), 1);
        assert_eq!(advance(1, 0), 1);
    }
}
