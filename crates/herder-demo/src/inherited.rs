//! The sockets a server is handed at its start (socket activation, an upgrade),
//! taken once and shared out by name.

/// The inherited sockets (systemd's, or an upgraded supervisor's), adopted once.
static INHERITED: std::sync::Mutex<Option<Vec<(String, herder_pool::Descriptor)>>> =
    std::sync::Mutex::new(None);

/// Takes the inherited sockets whose name `wanted` accepts.
pub fn inherited(
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<(String, herder_pool::Descriptor)>> {
    use anyhow::Context;
    let mut all = INHERITED
        .lock()
        .map_err(|_| anyhow::anyhow!("inherited sockets: poisoned"))?;
    if all.is_none() {
        *all = Some(herder_pool::inherited_sockets().context("socket activation")?);
    }
    let all = all.get_or_insert_with(Vec::new);
    let (taken, rest) = std::mem::take(all)
        .into_iter()
        .partition(|(name, _)| wanted(name));
    *all = rest;
    Ok(taken)
}
