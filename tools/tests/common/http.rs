//! The admin API tests' HTTP client (`minreq`, the CLI's client).

/// An admin API answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn request(address: &str, method: &str, path: &str, body: &str) -> Response {
    let url = format!("http://{address}{path}");
    let request = match method {
        "GET" => minreq::get(&url),
        "PUT" => minreq::put(&url),
        "POST" => minreq::post(&url),
        other => panic!("no {other} in these tests"),
    };
    let response = request.with_body(body).with_timeout(30).send().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    Response {
        status: response.status_code,
        content_type: response
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.clone())
            .unwrap_or_default(),
        body: response.as_str().expect("a UTF-8 body").to_string(),
    }
}

pub fn get(address: &str, path: &str) -> Response {
    request(address, "GET", path, "")
}
