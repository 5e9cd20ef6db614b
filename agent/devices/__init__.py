"""Device hotplug: kernel uevents, a watcher that never misses one, PCI path
resolution and the block-device lookups the storage drivers wait on."""
