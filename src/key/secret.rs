use std::fmt;

use zeroize::Zeroizing;

/// A key or credential held in memory.
///
/// It has no `Display`, its `Debug` prints nothing of the value, and the bytes are
/// zeroed when it is dropped. The only way to read it is [`Secret::expose`], so
/// every place that needs the raw value is easy to find.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}
