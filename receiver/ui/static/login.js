// The sign-in link `voicehooks serve` prints carries the token in the URL fragment
// (#token=...), which the browser never sends to the server: fill the form with it, drop it
// from the address bar and history, and sign in.
(function () {
  "use strict";
  var match = /^#token=(.+)$/.exec(window.location.hash);
  if (!match) { return; }
  history.replaceState(null, "", window.location.pathname + window.location.search);
  var form = document.getElementById("login-form");
  document.getElementById("token").value = decodeURIComponent(match[1]);
  if (!document.getElementById("login-error")) { form.submit(); }
})();
