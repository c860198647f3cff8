//! Car-navigation push channel for pinpost: MQTT 5 to telematics brokers
