"""Push providers: APNs (aioapns), FCM HTTP v1 (pyfcm) and the log provider, behind one interface."""
