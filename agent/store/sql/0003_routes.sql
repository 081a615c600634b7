-- Proxy routes: a domain (and path prefix) served by a service. No foreign key to services:
-- the services side removes a service's routes through RouteService.delete_routes_for_service.

CREATE TABLE proxy_routes (
    id          TEXT PRIMARY KEY,
    domain      TEXT NOT NULL,
    path_prefix TEXT NOT NULL DEFAULT '/',
    service_id  TEXT NOT NULL,
    port        INTEGER CHECK (port IS NULL OR port BETWEEN 1 AND 65535),
    created_at  REAL NOT NULL
);
CREATE UNIQUE INDEX proxy_routes_domain_path ON proxy_routes (domain, path_prefix);
CREATE INDEX proxy_routes_service ON proxy_routes (service_id);
