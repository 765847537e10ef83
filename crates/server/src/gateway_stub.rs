//! Placeholder until the JSON gateway lands.
pub fn router(_api: crate::service::Api) -> axum::Router {
    axum::Router::new()
}
