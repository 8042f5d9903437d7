"""Libraries every step shares: storage, images, records, reports, progress, the registry layout,
serving helpers and the option declarations. They know nothing about any step."""
