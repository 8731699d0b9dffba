"""Inner-product sketches and join-size / join-correlation estimation."""
