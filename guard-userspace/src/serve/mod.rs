//! What the daemon serves to load balancers and monitoring: the health HTTP endpoints
//! (`/livez`, `/readyz`, `/readyz/haproxy`, `/metrics`), the HAProxy agent-check port, and the
//! metrics they render.
pub mod agent;
pub mod http;
pub mod metrics;
