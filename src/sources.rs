//! The alert sources of one running daemon: the MDE client and, when any tenant is read from
//! Graph, the Graph client, with each tenant's requests sent to its own source. The sync
//! algorithm sees one [`AlertSource`]; it parses each tenant's alerts by [`Tenant::source`].

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use crate::{
    BoxFuture,
    graph::GraphClient,
    mde::{AlertSource, ApiError, MdeClient, Page, WindowQuery},
    source::SourceKind,
    tenant::{Tenant, TenantId},
};

/// Routes each tenant's requests to the API its tenants-file entry names.
pub struct Sources {
    pub mde: Arc<MdeClient>,
    pub graph: Arc<GraphClient>,
    kinds: RwLock<HashMap<TenantId, SourceKind>>,
}

impl Sources {
    pub fn new(mde: Arc<MdeClient>, graph: Arc<GraphClient>, tenants: &[Tenant]) -> Self {
        let s = Self {
            mde,
            graph,
            kinds: RwLock::default(),
        };
        s.set_tenants(tenants);
        s
    }

    /// Takes each tenant's source from `tenants` (on start and on reload).
    pub fn set_tenants(&self, tenants: &[Tenant]) {
        *self.kinds.write().expect("source map") =
            tenants.iter().map(|t| (t.id.clone(), t.source)).collect();
    }

    /// The source `tenant` is read from (MDE for a tenant not listed).
    pub fn kind(&self, tenant: &TenantId) -> SourceKind {
        self.kinds
            .read()
            .expect("source map")
            .get(tenant)
            .copied()
            .unwrap_or_default()
    }

    fn pick(&self, tenant: &TenantId) -> &dyn AlertSource {
        match self.kind(tenant) {
            SourceKind::Mde => self.mde.as_ref(),
            SourceKind::Graph => self.graph.as_ref(),
        }
    }
}

impl AlertSource for Sources {
    fn fetch<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a WindowQuery,
    ) -> BoxFuture<'a, Result<Page, ApiError>> {
        self.pick(tenant).fetch(tenant, q)
    }

    fn fetch_link<'a>(
        &'a self,
        tenant: &'a TenantId,
        link: &'a str,
    ) -> BoxFuture<'a, Result<Page, ApiError>> {
        self.pick(tenant).fetch_link(tenant, link)
    }
}
