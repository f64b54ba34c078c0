CONNECT_ARGS = {"timeout": 30}
