// Starts GraphiQL against this server's /graphql and adds the caller's bearer
// token to every request (the schema fetch included).
//
// The token comes from the field above the editor, is kept in this browser's
// localStorage, and can be handed over in the address as #token=... (a
// fragment never reaches the server or its logs; it is removed from the
// address bar at once). An Authorization header typed into GraphiQL's
// Headers pane wins over the field.
(function () {
  'use strict';
  var STORAGE_KEY = 'tagbase.playground.token';
  var form = document.getElementById('tagbase-bar');
  var input = document.getElementById('tagbase-token');
  var status = document.getElementById('tagbase-status');
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));

  function readStored() {
    try { return localStorage.getItem(STORAGE_KEY) || ''; } catch (e) { return ''; }
  }
  function store(token) {
    try {
      if (token) { localStorage.setItem(STORAGE_KEY, token); } else { localStorage.removeItem(STORAGE_KEY); }
    } catch (e) { /* storage disabled: the token lasts for this page only */ }
  }
  function fromFragment() {
    var match = /(?:^#|&)token=([^&]*)/.exec(window.location.hash);
    if (!match) { return ''; }
    history.replaceState(null, '', window.location.pathname + window.location.search);
    return decodeURIComponent(match[1]);
  }

  var generation = 0;
  function start(token) {
    token = token.trim().replace(/^Bearer\s+/i, '');
    input.value = token;
    status.textContent = token ? 'signed in with the token above' : 'no token: every request answers UNAUTHENTICATED';
    var headers = token ? { Authorization: 'Bearer ' + token } : {};
    var fetcher = GraphiQL.createFetcher({ url: new URL('/graphql', window.location.href).href, headers: headers });
    generation += 1;
    // A new key remounts GraphiQL, so the schema is fetched again with the new token.
    root.render(React.createElement(GraphiQL, {
      key: generation,
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      defaultQuery: '# Put a token in the field above, then run this with Ctrl-Enter.\n' +
        '{\n  me { staff { login displayName } }\n  customers(first: 5) { totalCount edges { node { name } } }\n}\n',
    }));
  }

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    store(input.value.trim());
    start(input.value);
  });
  document.getElementById('tagbase-forget').addEventListener('click', function () {
    store('');
    start('');
  });

  var handed = fromFragment();
  if (handed) { store(handed); }
  start(handed || readStored());
})();
