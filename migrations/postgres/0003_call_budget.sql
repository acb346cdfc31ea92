-- The per-tenant call budget and a pending Retry-After, kept in the database: after a restart
-- (or when another replica takes a tenant over) the calls the API has already counted and a
-- Retry-After it has already asked for still hold.
--
-- Rows are per tenant and per API (`api`: 'mde'; another source has its own limits), written by
-- whoever calls the API for that tenant, so every replica sharing the database reads the same
-- budget.

-- One row per API call sent in the last hour (older rows are pruned as new ones are written).
CREATE TABLE api_calls (
    tenant_id  text        NOT NULL,
    api        text        NOT NULL,
    sent_at    timestamptz NOT NULL
);
CREATE INDEX api_calls_by_tenant ON api_calls (tenant_id, api, sent_at);

-- No call for the tenant before `not_before` (the latest Retry-After).
CREATE TABLE api_holds (
    tenant_id   text        NOT NULL,
    api         text        NOT NULL,
    not_before  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, api)
);
