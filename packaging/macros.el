# rpm macros that packaging/build-rpm loads (rpmbuild --load) after the build host's own, so the
# RPM's scriptlets are the same wherever it is built (Debian has no systemd-rpm-macros at all).
#
# These are EL8's definitions (systemd 239's macros.systemd): they call systemctl directly, which
# works on EL8 and EL9 alike. EL9's own versions go through /usr/lib/systemd/systemd-update-helper
# and do nothing where it is missing, i.e. on EL8. Daemon reloads after unit changes come from
# the systemd package's file triggers on both.

%systemd_post() \
if [ $1 -eq 1 ] ; then \
        # Initial installation \
        systemctl --no-reload preset %{?*} >/dev/null 2>&1 || : \
fi \
%{nil}

%systemd_preun() \
if [ $1 -eq 0 ] ; then \
        # Package removal, not upgrade \
        systemctl --no-reload disable --now %{?*} >/dev/null 2>&1 || : \
fi \
%{nil}

%systemd_postun() %{nil}

%systemd_postun_with_restart() \
if [ $1 -ge 1 ] ; then \
        # Package upgrade, not uninstall \
        systemctl try-restart %{?*} >/dev/null 2>&1 || : \
fi \
%{nil}

%tmpfiles_create() \
systemd-tmpfiles --create %{?*} >/dev/null 2>&1 || : \
%{nil}
