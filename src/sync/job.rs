//! A job: one tenant's collection, what one run syncs (see "Collections" in [`super`]).

use crate::{
    collection::Collection,
    tenant::{Tenant, TenantId},
};

/// One tenant's collection: what one run syncs. It reads as the tenant (it dereferences to it),
/// with the source and API host its collection is read from: a tenant's incidents come from
/// Graph whatever its alerts' source.
#[derive(Debug, Clone)]
pub struct Job {
    tenant: Tenant,
    pub collection: Collection,
}

impl Job {
    pub fn new(tenant: &Tenant, collection: Collection) -> Self {
        let mut t = tenant.clone();
        t.source = collection.source_for(tenant.source);
        if collection != Collection::Alerts {
            // MDE's geo hosts are for its alerts API only
            t.api_url = None;
        }
        Self {
            tenant: t,
            collection,
        }
    }

    /// The tenant's jobs: its alerts, and its incidents when it syncs them.
    pub fn all(tenant: &Tenant) -> Vec<Job> {
        let mut jobs = vec![Job::new(tenant, Collection::Alerts)];
        if tenant.incidents {
            jobs.push(Job::new(tenant, Collection::Incidents));
        }
        jobs
    }

    /// What per-collection state is kept under.
    pub fn key(&self) -> JobKey {
        (self.tenant.id.clone(), self.collection)
    }
}

impl std::ops::Deref for Job {
    type Target = Tenant;
    fn deref(&self) -> &Tenant {
        &self.tenant
    }
}

/// A (tenant, collection): cursors, slow retries and unrecorded runs are kept per key.
pub type JobKey = (TenantId, Collection);
