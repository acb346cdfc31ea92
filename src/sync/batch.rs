//! The sink one response's alerts stream into: each alert parsed and checked as it arrives,
//! batches of at most [`WRITE_BATCH`] alerts (≈ [`WRITE_BATCH_BYTES`]) handed to the writer, and
//! only what the algorithm needs to know about the page kept.

use super::*;
use crate::{
    api::Created,
    model::{ALERT_COLUMNS, INCIDENT_COLUMNS, Val, column_index},
};

/// Receives one response's alerts as they arrive: parses and checks each, hands full batches to
/// the writer, and keeps what the algorithm needs to know about the page — how many alerts, their
/// `lastUpdateTime`s (to split a full window), its last ids (the overlap check of an instant) —
/// never the alerts themselves.
pub(super) struct PageSink {
    pub(super) tenant: TenantId,
    /// The tenant's source: whose alert model parses what arrives.
    pub(super) source: SourceKind,
    /// What arrives: alerts, or incidents (Graph's incident model).
    pub(super) collection: Collection,
    /// The `$top` asked for: a response with more alerts than that is refused.
    pub(super) top: Option<usize>,
    /// Whether alerts are written (a probe only counts).
    pub(super) write: bool,
    pub(super) tx: Option<mpsc::Sender<Batch>>,
    pub(super) batch: Vec<AlertRow>,
    pub(super) batch_bytes: usize,
    /// Alerts in the current attempt.
    pub(super) count: usize,
    pub(super) times: Vec<Timestamp>,
    /// The creation times of the page's alerts that have one (kept with `times`).
    pub(super) created_times: Vec<Timestamp>,
    pub(super) keep_times: bool,
    /// The first `tail_len` ids, in the order served.
    pub(super) head: Vec<String>,
    /// The cell of creation times asked for: an alert created outside it is refused.
    pub(super) cell: Created,
    /// Every version read, as (hash of id and time, time), to find late arrivals (freshness).
    pub(super) track: Option<Vec<(u64, Timestamp)>>,
    /// The last `tail_len` ids.
    pub(super) tail: VecDeque<String>,
    pub(super) tail_len: usize,
    /// Ids of which one must appear on this page (the previous page's tail), and whether one did.
    pub(super) expect: HashSet<String>,
    pub(super) found: bool,
    pub(super) received: u64,
    pub(super) rejected: u64,
    /// Alerts kept with some columns NULL (a property of the wrong shape).
    pub(super) coerced: u64,
    /// The window asked for: an alert whose `lastUpdateTime` lies outside it is refused, since
    /// no window vouches for it and, stamped in the future, it would win "newer wins" for good.
    pub(super) window: Option<(Timestamp, Timestamp)>,
    /// Why the read was ended, if the sink ended it.
    pub(super) error: Option<SyncError>,
}

impl PageSink {
    /// A sink for a probe: it counts what arrives and writes nothing (a probe is read without
    /// evidence, so writing its alert would replace the stored version's evidence).
    pub(super) fn probe(tenant: &Job) -> Self {
        let mut sink = Self::new(tenant, Some(1), 1, true);
        sink.write = false;
        sink
    }

    pub(super) fn new(tenant: &Job, top: Option<usize>, tail_len: usize, keep_times: bool) -> Self {
        Self {
            tenant: tenant.id.clone(),
            source: tenant.source,
            collection: tenant.collection,
            top,
            write: true,
            tx: None,
            batch: Vec::new(),
            batch_bytes: 0,
            count: 0,
            times: Vec::new(),
            created_times: Vec::new(),
            keep_times,
            head: Vec::new(),
            cell: Created::Any,
            track: None,
            tail: VecDeque::new(),
            tail_len,
            expect: HashSet::new(),
            found: false,
            received: 0,
            rejected: 0,
            coerced: 0,
            window: None,
            error: None,
        }
    }

    /// Sends the batch being filled to the writer, with the watermark it completes, if any.
    pub(super) async fn flush(&mut self, watermark: Option<Timestamp>) -> Result<(), SyncError> {
        if self.batch.is_empty() && watermark.is_none() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        match &self.tx {
            Some(tx) => tx.send((rows, watermark)).await.map_err(|_| {
                SyncError::Store(StoreError::Internal("the database writer stopped".into()))
            }),
            None => Ok(()),
        }
    }

    fn note_id(&mut self, id: &str) {
        if !self.found && self.expect.contains(id) {
            self.found = true;
        }
        if self.head.len() < self.tail_len {
            self.head.push(id.to_owned());
        }
        if self.tail_len > 0 {
            if self.tail.len() == self.tail_len {
                self.tail.pop_front();
            }
            self.tail.push_back(id.to_owned());
        }
    }
}

/// Where the creation time (A4's second time) sits in a parsed row of `collection`.
fn created_column(collection: Collection) -> usize {
    static ALERT: std::sync::LazyLock<usize> =
        std::sync::LazyLock::new(|| column_index(ALERT_COLUMNS, "alert_creation_time"));
    static INCIDENT: std::sync::LazyLock<usize> =
        std::sync::LazyLock::new(|| column_index(INCIDENT_COLUMNS, "creation_time"));
    match collection {
        Collection::Alerts => *ALERT,
        Collection::Incidents => *INCIDENT,
    }
}

/// A version's identity within this process: its id and last-update time, hashed.
pub(super) fn version_hash(id: &str, t: Timestamp) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    t.ticks().hash(&mut h);
    h.finish()
}

impl PageSink {
    /// Checks one parsed alert and adds it to the batch, or refuses it (counted and logged).
    fn take(&mut self, row: AlertRow, bytes: usize) {
        self.note_id(&row.id);
        let Some(t) = row.last_update else {
            // Without it no version can be ordered against another, and no window or watermark
            // covers the alert.
            self.rejected += 1;
            tracing::warn!(alert_id = %row.id, reason = "no lastUpdateTime", problems = %row.coerced.join("; "), "malformed alert skipped");
            return;
        };
        if let Some((from, to)) = self.window
            && (t < from || t >= to)
        {
            self.rejected += 1;
            tracing::warn!(alert_id = %row.id, last_update = %t, window_from = %from, window_to = %to, "the API sent an alert outside the window asked for, refused");
            return;
        }
        let created = match &row.values[created_column(self.collection)] {
            Val::Time(c) => *c,
            _ => None,
        };
        if let Some(ct) = created
            && !self.cell.holds(Some(ct))
        {
            self.rejected += 1;
            tracing::warn!(alert_id = %row.id, created = %ct, "the API sent an alert created outside the cell asked for, refused");
            return;
        }
        if self.keep_times {
            self.times.push(t);
            self.created_times.extend(created);
        }
        if let Some(track) = &mut self.track {
            track.push((version_hash(&row.id, t), t));
        }
        if !self.write {
            return;
        }
        if let Some(aad) = &row.aad_tenant_id
            && !aad.eq_ignore_ascii_case(self.tenant.as_str())
        {
            self.rejected += 1;
            tracing::error!(alert_id = %row.id, aad_tenant_id = %aad, "alert belongs to another tenant, refused");
            return;
        }
        if !row.coerced.is_empty() {
            self.coerced += 1;
            tracing::warn!(alert_id = %row.id, problems = %row.coerced.join("; "), "alert stored with the columns of malformed properties NULL; raw holds them as received");
        }
        self.batch_bytes += bytes;
        self.batch.push(row);
    }
}

impl AlertSink for PageSink {
    fn begin(&mut self) {
        self.count = 0;
        self.times.clear();
        self.created_times.clear();
        self.tail.clear();
        self.head.clear();
        self.found = false;
        if let Some(track) = &mut self.track {
            track.clear();
        }
    }

    fn item<'a>(&'a mut self, raw: &'a RawValue) -> BoxFuture<'a, Result<(), Abort>> {
        Box::pin(async move {
            self.count += 1;
            self.received += 1;
            if let Some(top) = self.top
                && self.count > top
            {
                tracing::warn!(
                    top,
                    "the API sent more alerts than $top asked for; the page proves nothing and the run fails"
                );
                self.error = Some(SyncError::OverTop {
                    top,
                    count: self.count,
                });
                return Err(Abort);
            }
            if !self.write && !self.keep_times {
                return Ok(());
            }
            let parsed = match (self.collection, self.source) {
                (Collection::Alerts, SourceKind::Mde) => mde::model::parse_alert(raw),
                (Collection::Alerts, SourceKind::Graph) => graph::model::parse_alert(raw),
                (Collection::Incidents, _) => graph::incident::parse_incident(raw),
            };
            match parsed {
                Ok(row) => self.take(row, raw.get().len()),
                Err(e) => {
                    if let Some(id) = &e.id {
                        self.note_id(id);
                    }
                    self.rejected += 1;
                    tracing::warn!(alert_id = %e.id.as_deref().unwrap_or(""), reason = %e.reason, "malformed alert skipped");
                }
            }
            if (self.batch.len() >= WRITE_BATCH || self.batch_bytes >= WRITE_BATCH_BYTES)
                && let Err(e) = self.flush(None).await
            {
                self.error = Some(e);
                return Err(Abort);
            }
            Ok(())
        })
    }
}
