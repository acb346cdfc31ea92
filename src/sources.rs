//! The alert sources of one running daemon: the MDE client and, when any tenant is read from
//! Graph, the Graph client, with each tenant's requests sent to its own source. The sync
//! algorithm sees one [`AlertSource`]; it parses each tenant's alerts by [`Tenant::source`].

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use crate::{
    BoxFuture,
    api::{AlertSink, AlertSource, ApiError, PageSummary, Route, WindowQuery},
    collection::Collection,
    graph::GraphClient,
    mde::MdeClient,
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

    /// Takes each tenant's source, and each MDE tenant's own API host, from `tenants` (on start and
    /// on reload).
    pub fn set_tenants(&self, tenants: &[Tenant]) {
        self.mde.set_tenants(tenants);
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
        sink: &'a mut dyn AlertSink,
    ) -> BoxFuture<'a, Result<PageSummary, ApiError>> {
        if self.route(tenant, q.collection) != q.route {
            return Box::pin(async { Err(ApiError::Rerouted) });
        }
        match q.collection {
            Collection::Alerts => self.pick(tenant).fetch(tenant, q, sink),
            // incidents come from Graph whatever the tenant's alerts are read from
            Collection::Incidents => self.graph.fetch(tenant, q, sink),
        }
    }
}

impl Sources {
    /// Where `tenant`'s `collection` is read from now.
    pub fn route(&self, tenant: &TenantId, collection: Collection) -> Route {
        let source = collection.source_for(self.kind(tenant));
        Route {
            source,
            api_url: match source {
                SourceKind::Mde => self.mde.tenant_api_url(tenant),
                SourceKind::Graph => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::TokenProvider, source::ServiceSources};

    #[test]
    fn each_tenant_is_routed_to_its_source_and_a_reload_reroutes_it() {
        let http = crate::auth::http_client(std::time::Duration::from_secs(1));
        let url = url::Url::parse("http://127.0.0.1:9").unwrap();
        let tokens = |scope: &str| {
            Arc::new(TokenProvider::new(
                http.clone(),
                url.clone(),
                "client".into(),
                None,
                scope.into(),
                crate::clock::system(),
            ))
        };
        let mde = Arc::new(MdeClient::new(
            http.clone(),
            url.clone(),
            tokens("https://api.securitycenter.microsoft.com/.default"),
            1,
        ));
        let graph = Arc::new(GraphClient::new(
            http.clone(),
            url.clone(),
            tokens("https://graph.microsoft.com/.default"),
            ServiceSources::Endpoint,
            1,
        ));
        let id =
            |n: u8| TenantId::parse(&format!("00000000-0000-4000-a000-00000000000{n}")).unwrap();
        let a = Tenant::new(id(1), "a");
        let b = Tenant::new(id(2), "b").with_source(SourceKind::Graph);
        let s = Sources::new(mde, graph, &[a.clone(), b]);
        assert_eq!(s.kind(&id(1)), SourceKind::Mde);
        assert_eq!(s.kind(&id(2)), SourceKind::Graph);
        // the tenants file reloaded: a moved to Graph, b removed
        s.set_tenants(&[a.with_source(SourceKind::Graph)]);
        assert_eq!(s.kind(&id(1)), SourceKind::Graph);
        assert_eq!(
            s.kind(&id(2)),
            SourceKind::Mde,
            "an unlisted tenant falls back to MDE"
        );
    }
}
