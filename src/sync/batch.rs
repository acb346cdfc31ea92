//! The sink one response's alerts stream into: each alert parsed and checked as it arrives,
//! batches of at most [`WRITE_BATCH`] alerts (≈ [`WRITE_BATCH_BYTES`]) handed to the writer, and
//! only what the algorithm needs to know about the page kept.

use super::*;

/// Receives one response's alerts as they arrive: parses and checks each, hands full batches to
/// the writer, and keeps what the algorithm needs to know about the page — how many alerts, their
/// `lastUpdateTime`s (to split a full window), its last ids (the overlap check of an instant) —
/// never the alerts themselves.
pub(super) struct PageSink {
    pub(super) tenant: TenantId,
    /// The tenant's source: whose alert model parses what arrives.
    pub(super) source: SourceKind,
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
    pub(super) keep_times: bool,
    /// The last `tail_len` ids.
    pub(super) tail: VecDeque<String>,
    pub(super) tail_len: usize,
    /// Ids of which one must appear on this page (the previous page's tail), and whether one did.
    pub(super) expect: HashSet<String>,
    pub(super) found: bool,
    pub(super) received: u64,
    pub(super) rejected: u64,
    /// Why the read was ended, if the sink ended it.
    pub(super) error: Option<SyncError>,
}

impl PageSink {
    pub(super) fn new(
        tenant: &Tenant,
        top: Option<usize>,
        tail_len: usize,
        keep_times: bool,
    ) -> Self {
        Self {
            tenant: tenant.id.clone(),
            source: tenant.source,
            top,
            write: true,
            tx: None,
            batch: Vec::new(),
            batch_bytes: 0,
            count: 0,
            times: Vec::new(),
            keep_times,
            tail: VecDeque::new(),
            tail_len,
            expect: HashSet::new(),
            found: false,
            received: 0,
            rejected: 0,
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
                SyncError::Store(StoreError::Config("the database writer stopped".into()))
            }),
            None => Ok(()),
        }
    }

    fn note_id(&mut self, id: &str) {
        if !self.found && self.expect.contains(id) {
            self.found = true;
        }
        if self.tail_len > 0 {
            if self.tail.len() == self.tail_len {
                self.tail.pop_front();
            }
            self.tail.push_back(id.to_owned());
        }
    }
}

impl AlertSink for PageSink {
    fn begin(&mut self) {
        self.count = 0;
        self.times.clear();
        self.tail.clear();
        self.found = false;
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
            if !self.write {
                return Ok(());
            }
            let parsed = match self.source {
                SourceKind::Mde => mde::model::parse_alert(raw),
                SourceKind::Graph => graph::model::parse_alert(raw),
            };
            match parsed {
                Ok(row) if row.last_update.is_none() => {
                    // Without it no version can be ordered against another, and no window or
                    // watermark covers the alert.
                    self.note_id(&row.id);
                    self.rejected += 1;
                    tracing::warn!(alert_id = %row.id, reason = "no lastUpdateTime", "malformed alert skipped");
                }
                Ok(row) => {
                    self.note_id(&row.id);
                    if self.keep_times
                        && let Some(t) = row.last_update
                    {
                        self.times.push(t);
                    }
                    if let Some(aad) = &row.aad_tenant_id
                        && !aad.eq_ignore_ascii_case(self.tenant.as_str())
                    {
                        self.rejected += 1;
                        tracing::error!(alert_id = %row.id, aad_tenant_id = %aad, "alert belongs to another tenant, refused");
                        return Ok(());
                    }
                    self.batch_bytes += raw.get().len();
                    self.batch.push(row);
                }
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
