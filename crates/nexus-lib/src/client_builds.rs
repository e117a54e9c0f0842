//! The typed client's calls on templates (`/v1/templates`) and builds (`/v1/builds`).

use http::Method;
use hyper::body::Incoming;

use super::{Client, ClientError, check, segment};
use crate::api::{Build, CreateTemplate, StartBuild, Template};

impl Client {
    /// `POST /v1/templates`: a new version of the template in `source` (TOML).
    pub async fn create_template(&self, source: &str) -> Result<Template, ClientError> {
        let req = CreateTemplate {
            source: source.to_owned(),
        };
        self.request(Method::POST, "/v1/templates", Some(&req))
            .await
    }

    /// `GET /v1/templates`.
    pub async fn list_templates(&self) -> Result<Vec<Template>, ClientError> {
        self.request(Method::GET, "/v1/templates", None::<&()>)
            .await
    }

    /// `GET /v1/templates/{template}`.
    pub async fn get_template(&self, template: &str) -> Result<Template, ClientError> {
        let path = format!("/v1/templates/{}", segment(template));
        self.request(Method::GET, &path, None::<&()>).await
    }

    /// `GET /v1/templates/{template}/versions`.
    pub async fn template_versions(&self, template: &str) -> Result<Vec<Template>, ClientError> {
        let path = format!("/v1/templates/{}/versions", segment(template));
        self.request(Method::GET, &path, None::<&()>).await
    }

    /// `DELETE /v1/templates/{template}`.
    pub async fn delete_template(&self, template: &str) -> Result<(), ClientError> {
        let path = format!("/v1/templates/{}", segment(template));
        self.request::<()>(Method::DELETE, &path, None::<&()>).await
    }

    /// `POST /v1/templates/{template}/build`: queued, or already succeeded (a cache hit).
    pub async fn start_build(&self, template: &str, no_cache: bool) -> Result<Build, ClientError> {
        let path = format!("/v1/templates/{}/build", segment(template));
        self.request(Method::POST, &path, Some(&StartBuild { no_cache }))
            .await
    }

    /// `GET /v1/builds`, of one template or all.
    pub async fn list_builds(&self, template: Option<&str>) -> Result<Vec<Build>, ClientError> {
        let path = match template {
            Some(t) => format!("/v1/builds?template={}", segment(t)),
            None => "/v1/builds".to_owned(),
        };
        self.request(Method::GET, &path, None::<&()>).await
    }

    /// `GET /v1/builds/{build}`.
    pub async fn get_build(&self, build: &str) -> Result<Build, ClientError> {
        let path = format!("/v1/builds/{}", segment(build));
        self.request(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/builds/{build}/cancel`: answers once the build VM and drive are gone.
    pub async fn cancel_build(&self, build: &str) -> Result<Build, ClientError> {
        let path = format!("/v1/builds/{}/cancel", segment(build));
        self.request(Method::POST, &path, None::<&()>).await
    }

    /// `GET /v1/builds/{build}/logs`: the log as a body, streamed until the build is over when
    /// `follow`.
    pub async fn build_logs(&self, build: &str, follow: bool) -> Result<Incoming, ClientError> {
        let path = format!("/v1/builds/{}/logs?follow={follow}", segment(build));
        let resp = self.send_raw(Method::GET, &path, None, None).await?;
        Ok(check(resp).await?.into_body())
    }
}
